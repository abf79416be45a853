"""datajuicer_ray: token-level curation of image-text pretraining data on Ray."""

__version__ = "0.2.0"
