"""Procedural industrial products with defects, masks and MMAD-style questions.

``render_sample`` draws one image; :mod:`.writer` writes whole MMAD/MVTec folders;
``judo_model.data.stream`` turns the same renderer into a camera frame stream.
"""

from .products import PRODUCTS, Product
from .render import RenderedSample, UnknownCategoryError, get_product, render_sample

CATEGORIES: tuple[str, ...] = tuple(PRODUCTS)

__all__ = ["CATEGORIES", "PRODUCTS", "Product", "RenderedSample", "UnknownCategoryError", "get_product",
           "render_sample"]
