"""EDM preconditioning, sigma schedules/samplers and the diffusion-transformer action head (vpp_reference §6.7-6.9)."""
