"""The GPU server path: frames letterboxed, detected, decoded and NMS-ed on the device.

Only boxes come back to the host; the uint8 frames go up once (or are already there when
NVDEC decoded them). Importing this package needs torch and torchvision.
"""
