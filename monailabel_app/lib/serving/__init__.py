"""The hardened server in front of MONAI Label's ASGI app (`python -m monailabel_app.serve`): one middleware concern per module."""
