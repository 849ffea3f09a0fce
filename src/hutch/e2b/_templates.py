"""E2B template ids -> Hutch images. Any Hutch image name is a template id too."""

from __future__ import annotations

# NB: Hutch's default image already holds what E2B's base and code-interpreter templates
# have (bash, python3 with ipykernel, numpy/pandas/matplotlib, node, git).
TEMPLATE_IMAGES = {
    "base": "default",
    "code-interpreter-v1": "default",
    "code-interpreter": "default",
}
DEFAULT_TEMPLATE = "base"


def image_for_template(template_id: str) -> str:
    return TEMPLATE_IMAGES.get(template_id, template_id)
