"""Configuration files of the real checkpoints on the hub, as the reference tests give them to diffusers."""

from __future__ import annotations

# damo-vilab/text-to-video-ms-1.7b's scheduler/scheduler_config.json (written by diffusers 0.15: no timestep_spacing).
# MCM and T2V-Turbo turn the same file into an LCMScheduler (with their timestep_scaling).
MS17B_SCHEDULER_CONFIG = {
    "_class_name": "DDIMScheduler",
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "beta_start": 0.00085,
    "clip_sample": False,
    "num_train_timesteps": 1000,
    "prediction_type": "epsilon",
    "set_alpha_to_one": False,
    "skip_prk_steps": True,
    "steps_offset": 1,
    "trained_betas": None,
}
