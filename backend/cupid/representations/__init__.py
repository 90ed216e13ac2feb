"""3D representations decoded from structured latents: Gaussians (`gaussian`) and FlexiCubes meshes (`mesh`)."""
