"""Python the bundle's configs import (`$import scripts`): data, transforms, networks, engines, sampling."""

from scripts import (
    adherence,
    alignment,
    body_mask,
    checkpoint,
    controlnet,
    datalist,
    distributed,
    engines,
    labels,
    latents,
    losses,
    networks,
    sampling,
    schedules,
    tumour_masks,
    volumes,
)
