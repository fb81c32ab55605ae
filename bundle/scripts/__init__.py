"""Python the bundle's configs import (`$import scripts`): data, transforms, networks, engines, sampling."""

from scripts import checkpoint, datalist, engines, labels, latents, losses, networks, sampling, volumes
