"""Helpers shared by the test modules: synthetic cameras and meshes, crafted bad images, bundles, ports."""
