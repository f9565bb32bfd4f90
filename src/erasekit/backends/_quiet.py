"""Silence transformers' one-time "CLIPImageProcessor requires torchvision" notice.

erasekit never installs torchvision (its registry builds break CPU torch) and never uses image
processors from diffusers' pipeline imports, so the notice is noise in every CLI run.
"""

import logging

logging.getLogger("transformers.utils.import_utils").setLevel(logging.ERROR)
