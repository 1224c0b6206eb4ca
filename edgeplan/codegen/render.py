"""The one place launcher text is made: jinja2 templates in ``templates/``, rendered strictly.

``StrictUndefined`` turns a missing variable into an error instead of an empty
string, so a template and its caller cannot drift apart silently. Shell values
go through the ``sh`` filter (``shlex.quote``); nothing is built by string formatting.
"""

from __future__ import annotations

import shlex
from functools import lru_cache
from pathlib import Path

import jinja2

TEMPLATES = Path(__file__).parent / "templates"


@lru_cache(maxsize=1)
def _env() -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(TEMPLATES),
        undefined=jinja2.StrictUndefined,
        autoescape=False,
        keep_trailing_newline=True,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters["sh"] = lambda v: shlex.quote(str(v))
    return env


def render(template: str, **context: object) -> str:
    """Render ``templates/<template>`` with ``context``; a variable the template needs but lacks raises."""
    return _env().get_template(template).render(**context)
