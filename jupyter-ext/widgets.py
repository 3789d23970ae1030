"""The rating widget shown under each %%ask answer, and the progress of a training run."""

from __future__ import annotations

import html
import threading
import time
from collections.abc import Callable
from typing import Any

import ipywidgets as widgets

# The trainer's phases, in the words a user reads.
PHASE_WORDS = {
    "snapshot": "preparing",
    "load": "loading the model",
    "reward_model": "judging your ratings",
    "ppo": "training",
    "eval": "checking",
    "save": "saving",
}


def time_left(seconds: float | None) -> str:
    """Say "about 40 s left" or "about 3 min left"; empty while no estimate is known."""
    if seconds is None or seconds < 0:
        return ""
    if seconds < 60:
        return f"about {max(5, round(seconds / 5) * 5)} s left"
    return (
        f"about {round(seconds / 60)} min left" if seconds < 5400 else f"about {round(seconds / 3600)} h left"
    )


def describe_training(training: dict[str, Any]) -> str:
    """`reinf/status`'s training part in words: "run 4: judging your ratings, 12%, about 2 min left"."""
    if training.get("state") != "running":
        return str(training.get("state") or "idle")
    words = [PHASE_WORDS.get(str(training.get("phase")), "training")]
    if training.get("progress") is not None:
        words.append(f"{float(training['progress']):.0%}")
    if time_left(training.get("eta_s")):
        words.append(time_left(training.get("eta_s")))
    return f"run {training.get('run_id')}: " + ", ".join(words)


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


def saved_message(params: dict[str, Any], result: dict[str, Any]) -> str:
    """What the widget says after a rating is stored: what was saved, then the ratings still to go."""
    parts = [
        f"thumbs {params['thumbs']}" if params.get("thumbs") else "",
        f"{params['stars']} star{'s' if params['stars'] != 1 else ''}" if params.get("stars") else "",
        "your comment" if params.get("comment") else "",
    ]
    parts = [p for p in parts if p]
    what = (
        ", ".join(parts[:-1]) + f" and {parts[-1]}" if len(parts) > 1 else (parts[0] if parts else "rating")
    )
    until = result.get("until_next_training")
    if until is None:
        return f"Saved: {what}."
    rest = (
        "Training starts now."
        if until <= 0
        else f"{until} more rating{'s' if until != 1 else ''} until the next training."
    )
    return f"Saved: {what}. {rest}"


class RatingWidget(widgets.VBox):
    """Thumbs and 1–5 stars on one row, each saved as it is clicked, and a comment box that opens on demand;
    `rate` sends the `reinf/rate` params (the whole rating so far: the daemon counts the newest)."""

    # The widget that says how many ratings are still to go: only the newest, as older counts are stale.
    counting: RatingWidget | None = None

    def __init__(
        self,
        interaction_id: str,
        rate: Callable[[dict[str, Any]], dict[str, Any]],
        caption: str = "",
        on_stored: Callable[[dict[str, Any]], widgets.Widget | None] | None = None,
    ):
        self.interaction_id = interaction_id
        self._on_stored = on_stored
        self.thumbs: str | None = None
        self.stars: int | None = None
        self.comment_text: str | None = None
        self.saves = 0
        self.saved = ""  # the last "Saved: …" sentence, without the count of ratings to go
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
        self.toggle = widgets.Button(
            description="Comment…", tooltip="Say what was good or wrong", layout=widgets.Layout(width="auto")
        )
        self.toggle.add_class("reinf-comment-toggle")
        self.toggle.on_click(lambda _: self.open_comment(self.box.layout.display == "none"))
        self.comment = widgets.Textarea(
            placeholder="What was good or wrong?",
            layout=widgets.Layout(width="100%", max_width="40em", height="4em"),
        )
        self.comment.add_class("reinf-comment")
        self.submit = widgets.Button(description="Send comment", button_style="primary")
        self.submit.add_class("reinf-submit")
        self.submit.on_click(lambda _: self.send_comment())
        self.box = widgets.VBox([self.comment, self.submit], layout=widgets.Layout(display="none"))
        self.status = widgets.HTML("")
        self.status.add_class("reinf-status")
        footer = widgets.HTML(f"<small>{html.escape(caption)}</small>") if caption else widgets.HTML("")
        row = widgets.HBox([self.up, self.down, widgets.Label(" "), *self.star_buttons, self.toggle])
        super().__init__([row, self.box, self.status, footer])
        self.add_class("reinf-rating")
        self.add_class(f"reinf-rating-{interaction_id}")

    @staticmethod
    def _button(label: str, tooltip: str, css_class: str, icon: str = "") -> widgets.Button:
        button = widgets.Button(
            description=label, tooltip=tooltip, icon=icon, layout=widgets.Layout(width="2.6em")
        )
        button.add_class(css_class)
        return button

    def open_comment(self, show: bool) -> None:
        self.box.layout.display = "flex" if show else "none"

    def set_thumbs(self, thumbs: str) -> None:
        self.thumbs = thumbs
        self.up.button_style = "success" if thumbs == "up" else ""
        self.down.button_style = "danger" if thumbs == "down" else ""
        self.send()

    def set_stars(self, stars: int) -> None:
        self.stars = stars
        for n, button in enumerate(self.star_buttons, start=1):
            button.description = STAR_ON if n <= stars else STAR_OFF
            button.button_style = "warning" if n <= stars else ""
        self.send()

    def send_comment(self) -> None:
        text = self.comment.value.strip()
        if not text:
            self._show("Write the comment first, then send it.", ok=False)
            return
        self.comment_text = text
        if self.send():
            self.comment.value = ""
            self.open_comment(False)

    def params(self) -> dict[str, Any]:
        params: dict[str, Any] = {"interaction_id": self.interaction_id}
        if self.thumbs:
            params["thumbs"] = self.thumbs
        if self.stars:
            params["stars"] = self.stars
        if self.comment_text:
            params["comment"] = self.comment_text
        return params

    def _show(self, message: str, ok: bool) -> None:
        color = "var(--jp-success-color1, green)" if ok else "var(--jp-error-color1, #c00)"
        # The count makes each confirmation new, even when the words are the same as the last one's.
        self.status.value = (
            f'<span style="color: {color}" data-saves="{self.saves}">{html.escape(message)}</span>'
        )

    def send(self) -> bool:
        """Store the rating so far, then say what was stored, or why not; True once stored."""
        params = self.params()
        self.status.value = "Saving…"
        try:
            result = self._rate(params)
        except Exception as exc:  # noqa: BLE001 - shown in the widget, so the user can try again
            self._show(f"Not saved: {exc}", ok=False)
            return False
        self.saves += 1
        message = saved_message(params, result)
        self._show(message, ok=True)
        previous, RatingWidget.counting = RatingWidget.counting, self
        if previous is not None and previous is not self and previous.saved:
            previous._show(previous.saved, ok=True)
        self.saved = message.split(". ", 1)[0] + "."
        # A rating that reached the threshold started a run: follow it here, under the answer.
        extra = self._on_stored(result) if self._on_stored else None
        if extra is not None:
            self.children = (*self.children, extra)
        return True


class TrainingProgress(widgets.VBox):
    """A training run as it goes: what it is doing, how far, the time left; then published or not, and why.

    A thread asks the daemon for its status every `interval` seconds until the run has ended."""

    FINAL = ("published", "rejected", "failed", "cancelled")

    def __init__(
        self,
        run_id: Any,
        request: Callable[..., dict[str, Any]],
        *,
        started_by: str = "",
        interval: float = 1.0,
        start: bool = True,
    ) -> None:
        self.run_id = run_id
        self.state = "running"
        self._request = request
        self._interval = interval
        why = f", started by {started_by}" if started_by else ""
        self.title = widgets.HTML(f"<b>Training run {html.escape(str(run_id))}</b>{html.escape(why)}")
        self.bar = widgets.FloatProgress(value=0.0, min=0.0, max=1.0, layout=widgets.Layout(width="20em"))
        self.line = widgets.HTML("starting…")
        self.line.add_class("reinf-training-status")
        super().__init__([self.title, widgets.HBox([self.bar, self.line])])
        self.add_class("reinf-training")
        self._thread = threading.Thread(target=self._follow, name=f"reinf-run-{run_id}", daemon=True)
        if start:
            self._thread.start()

    def _follow(self) -> None:
        failures = 0
        while self.state not in self.FINAL:
            try:
                self.update(self._request("reinf/status"))
                failures = 0
            except Exception as exc:  # noqa: BLE001 - shown, and tried again: the daemon may be restarting
                failures += 1
                self.line.value = html.escape(f"cannot ask the daemon: {exc}")
                if failures >= 30:
                    return
            if self.state not in self.FINAL:
                time.sleep(self._interval)

    def update(self, status: dict[str, Any]) -> None:
        """Redraw from a `reinf/status` result; once the run is no longer the running one, say how it ended."""
        training = status.get("training") or {}
        if training.get("state") == "running" and str(training.get("run_id")) == str(self.run_id):
            self.bar.value = float(training.get("progress") or 0.0)
            self.line.value = html.escape(describe_training(training).split(": ", 1)[-1])
            return
        runs = self._request("reinf/runs", {"limit": 20}).get("runs") or []
        run = next((r for r in runs if str(r.get("run_id")) == str(self.run_id)), None)
        if run is None or run.get("state") not in self.FINAL:
            return  # not started yet, or its end is not recorded yet
        self.show_end(run, status.get("adapter_version") or 0)

    def show_end(self, run: dict[str, Any], active: int) -> None:
        state = str(run["state"])
        stays = f"adapter v{active} stays active" if active else "the base model stays"
        reasons = (
            "; ".join(map(str, (run.get("metrics") or {}).get("reasons") or [])) or run.get("error") or ""
        )
        if state == "published":
            text, color = (
                f"Published: adapter v{run.get('adapter_version')} is live; your next answer uses it.",
                "success",
            )
            self.bar.value = 1.0
        elif state == "rejected":
            text = f"Not published{': ' + reasons if reasons else ''}. So {stays}. Rate more answers, then %reinf retrain again."
            color = "warning"
        elif state == "failed":
            text, color = f"Failed{': ' + reasons if reasons else ''}. So {stays}.", "danger"
        else:
            text, color = f"Cancelled. So {stays}.", "info"
        self.bar.bar_style = color
        self.line.value = html.escape(text)
        self.add_class(f"reinf-training-{state}")
        self.state = state
