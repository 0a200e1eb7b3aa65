"""How the studio's handlers become Gradio endpoints: the session store filled in, errors shown as messages.

A handler is a plain function `fn(..., sessions, request)`. `session_endpoint` shows Gradio its parameters
without `sessions`; `with_parameters` turns a handler of one `values` dict into one positional parameter per
name (the API's parameter names, in the order of the inputs). Both wrap the handler in `user_errors`, so a
library error reaches the page (and `gradio_client`) as its message, naming the control to change first.
"""

from __future__ import annotations

import functools
import inspect
import re
import typing
from collections.abc import Callable, Iterator
from typing import Any

import gradio as gr

from superlora.controls import FIELD_LABELS
from superlora.errors import ConfigError, SuperLoRAError
from superlora.studio.sessions import SessionStore


def friendly_message(err: Exception) -> str:
    """A library error in the words of the studio: the control to look at first, then the library's message."""
    text = str(err)
    match = re.match(r"^(\w+)=", text)
    if isinstance(err, ConfigError) and match and match.group(1) in FIELD_LABELS:
        return f"{FIELD_LABELS[match.group(1)]}: {text}"
    return text


def unexpected(err: Exception) -> gr.Error:
    """An error the studio did not expect, as one line for the user (the console gets the traceback)."""
    return gr.Error(f"Something went wrong that the studio did not expect ({type(err).__name__}: {err}). "
                    "Your session is still usable; if it happens again, please report it with this message.",
                    print_exception=True)


def _as_message(err: Exception) -> gr.Error | None:
    """The gr.Error to raise instead of `err`, or None to re-raise `err` itself (it already is one)."""
    if isinstance(err, gr.Error):
        return None
    if isinstance(err, SuperLoRAError):
        return gr.Error(friendly_message(err), print_exception=False)
    return unexpected(err)


def user_errors(fn: Callable) -> Callable:
    """Show a library error as its message (a gr.Error), and anything unexpected as one line, never a traceback."""
    if inspect.isgeneratorfunction(fn):
        @functools.wraps(fn)
        def generator(*args: Any, **kwargs: Any) -> Iterator[Any]:
            try:
                yield from fn(*args, **kwargs)
            except Exception as err:  # noqa: BLE001 - the user gets one line; the console gets the traceback
                shown = _as_message(err)
                if shown is None:
                    raise
                raise shown from err
        return generator

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except Exception as err:  # noqa: BLE001
            shown = _as_message(err)
            if shown is None:
                raise
            raise shown from err
    return wrapper


def _as_endpoint(fn: Callable, call: Callable) -> Callable:
    """A function with `fn`'s name and docs that hands its arguments to `call`: a generator when `fn` is one
    (Gradio streams a generator's outputs)."""
    if inspect.isgeneratorfunction(fn):
        def endpoint(*args: Any, **kwargs: Any) -> Iterator[Any]:
            yield from call(*args, **kwargs)
    else:
        def endpoint(*args: Any, **kwargs: Any) -> Any:
            return call(*args, **kwargs)
    endpoint.__name__, endpoint.__qualname__, endpoint.__doc__ = fn.__name__, fn.__qualname__, fn.__doc__
    return endpoint


def session_endpoint(fn: Callable, sessions: SessionStore) -> Callable:
    """`fn` as Gradio should see it: its parameters minus `sessions` (filled in with this app's store), with the
    real type hints (Gradio injects `gr.Request`, `gr.SelectData` and `gr.Progress` by annotation or default), and
    errors shown as messages (`user_errors`)."""
    wrapped = user_errors(fn)
    signature = inspect.signature(fn)
    hints = typing.get_type_hints(fn)
    # Gradio passes inputs by position, so keyword-only parameters (after a defaulted one) are shown as positional.
    parameters = [p.replace(annotation=hints.get(name, p.annotation), kind=inspect.Parameter.POSITIONAL_OR_KEYWORD)
                  for name, p in signature.parameters.items() if name != "sessions"]
    names = [p.name for p in parameters]

    def call(*args: Any, **kwargs: Any) -> Any:
        return wrapped(**{**dict(zip(names, args)), **kwargs, "sessions": sessions})

    endpoint = _as_endpoint(fn, call)
    endpoint.__signature__ = signature.replace(parameters=parameters, return_annotation=inspect.Signature.empty)
    endpoint.__annotations__ = {name: hint for name, hint in hints.items() if name in names}
    return endpoint


def with_parameters(fn: Callable, names: tuple[str, ...], sessions: SessionStore) -> Callable:
    """`fn(values, sessions, request)` as Gradio should see it: one positional parameter per name (the API's
    parameter names), then the request, with errors shown as messages."""
    wrapped = user_errors(fn)

    def call(*args: Any) -> Any:
        *values, request = args
        return wrapped(dict(zip(names, values)), sessions, request)

    endpoint = _as_endpoint(fn, call)
    kind = inspect.Parameter.POSITIONAL_OR_KEYWORD
    endpoint.__signature__ = inspect.Signature([*(inspect.Parameter(name, kind) for name in names),
                                                inspect.Parameter("request", kind, annotation=gr.Request)])
    endpoint.__annotations__ = {"request": gr.Request}
    return endpoint


def notes_text(lines: list[str]) -> str:
    """Paragraphs of a Markdown note."""
    return "\n\n".join(lines)


def sentence(text: str) -> str:
    """`text` as a sentence: a capital first letter and a full stop."""
    return text[:1].upper() + text[1:] + ("" if not text or text.endswith(".") else ".")
