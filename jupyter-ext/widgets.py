"""The rating widget shown under each %%ask answer."""

from __future__ import annotations

import html
from collections.abc import Callable
from typing import Any

import ipywidgets as widgets

STAR_OFF, STAR_ON = "☆", "★"


def describe_stored(result: dict[str, Any]) -> str:
    """One sentence on a stored rating, from the `reinf/rate` result."""
    total = result.get("ratings_total")
    until = result.get("until_next_training")
    parts = ["Rating stored"]
    if total is not None:
        parts.append(f"{total} rating{'s' if total != 1 else ''} in total")
    if until is not None:
        parts.append("training is due" if until <= 0 else f"{until} more until the next training run")
    return parts[0] + (" (" + "; ".join(parts[1:]) + ")" if len(parts) > 1 else "") + "."


class RatingWidget(widgets.VBox):
    """Thumbs, 1–5 stars, a comment and a submit button; `rate` sends the `reinf/rate` params."""

    def __init__(
        self, interaction_id: str, rate: Callable[[dict[str, Any]], dict[str, Any]], caption: str = ""
    ):
        self.interaction_id = interaction_id
        self.thumbs: str | None = None
        self.stars: int | None = None
        self._rate = rate

        self.up = self._button("", "Thumbs up: a good answer", "reinf-thumbs-up", icon="thumbs-up")
        self.down = self._button("", "Thumbs down: a bad answer", "reinf-thumbs-down", icon="thumbs-down")
        self.up.on_click(lambda _: self.set_thumbs("up"))
        self.down.on_click(lambda _: self.set_thumbs("down"))
        self.star_buttons = []
        for n in range(1, 6):
            button = self._button(STAR_OFF, f"{n} star{'s' if n > 1 else ''}", f"reinf-star-{n}")
            button.on_click(lambda _, n=n: self.set_stars(n))
            self.star_buttons.append(button)
        self.comment = widgets.Textarea(
            placeholder="Comment (optional): what was good or wrong?",
            layout=widgets.Layout(width="100%", max_width="40em", height="4em"),
        )
        self.comment.add_class("reinf-comment")
        self.submit = widgets.Button(description="Submit rating", button_style="primary")
        self.submit.add_class("reinf-submit")
        self.submit.on_click(lambda _: self.send())
        self.status = widgets.HTML("")
        self.status.add_class("reinf-status")
        footer = widgets.HTML(f"<small>{html.escape(caption)}</small>") if caption else widgets.HTML("")
        super().__init__(
            [
                widgets.HBox([self.up, self.down, widgets.Label(" "), *self.star_buttons]),
                self.comment,
                widgets.HBox([self.submit, self.status]),
                footer,
            ]
        )
        self.add_class("reinf-rating")
        self.add_class(f"reinf-rating-{interaction_id}")

    @staticmethod
    def _button(label: str, tooltip: str, css_class: str, icon: str = "") -> widgets.Button:
        button = widgets.Button(
            description=label, tooltip=tooltip, icon=icon, layout=widgets.Layout(width="2.6em")
        )
        button.add_class(css_class)
        return button

    def set_thumbs(self, thumbs: str) -> None:
        self.thumbs = None if self.thumbs == thumbs else thumbs  # a second click takes it back
        self.up.button_style = "success" if self.thumbs == "up" else ""
        self.down.button_style = "danger" if self.thumbs == "down" else ""

    def set_stars(self, stars: int) -> None:
        self.stars = stars
        for n, button in enumerate(self.star_buttons, start=1):
            button.description = STAR_ON if n <= stars else STAR_OFF
            button.button_style = "warning" if n <= stars else ""

    def params(self) -> dict[str, Any]:
        params: dict[str, Any] = {"interaction_id": self.interaction_id}
        if self.thumbs:
            params["thumbs"] = self.thumbs
        if self.stars:
            params["stars"] = self.stars
        if self.comment.value.strip():
            params["comment"] = self.comment.value.strip()
        return params

    def _show(self, message: str, ok: bool) -> None:
        color = "var(--jp-success-color1, green)" if ok else "var(--jp-error-color1, #c00)"
        self.status.value = f'<span style="color: {color}">{html.escape(message)}</span>'

    def send(self) -> None:
        """Submit the rating, then show that it was stored, or why not."""
        params = self.params()
        if len(params) == 1:
            self._show("Pick thumbs or stars, or write a comment, then submit.", ok=False)
            return
        self.submit.disabled = True
        self.status.value = "Saving…"
        try:
            result = self._rate(params)
        except Exception as exc:  # shown in the widget, so the user can submit again
            self._show(f"The rating was not stored: {exc}", ok=False)
            return
        finally:
            self.submit.disabled = False
        self.submit.description = "Update rating"
        self._show(describe_stored(result), ok=True)
