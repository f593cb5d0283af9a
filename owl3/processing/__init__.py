"""Turning chat messages, images and videos into model inputs (mPLUG-Owl3 240728 processor).

`Processor(tokenizer, image_size)(messages, images, videos, cut=True) -> Encoding` is the entry point;
`chat` holds the ChatML template (and OpenAI-style content parts), `decode` turns what users pass (files,
bytes, arrays) into RGB images as a viewer shows them, `image` holds the pixel transform and crop grids,
`video` the frame sampling.
"""

from owl3.processing.chat import chat_segments, cut_prompt, render
from owl3.processing.decode import load_image, to_rgb
from owl3.processing.image import GRIDS, choose_grid, crop_views, global_view, image_views
from owl3.processing.processor import Encoding, Processor, official_media_offset

__all__ = [
    "GRIDS",
    "Encoding",
    "Processor",
    "chat_segments",
    "choose_grid",
    "crop_views",
    "cut_prompt",
    "global_view",
    "image_views",
    "load_image",
    "official_media_offset",
    "render",
    "to_rgb",
]
