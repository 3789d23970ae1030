// Implicit feedback on inline completions. VS Code tells an extension when an item is accepted (the item's
// command runs) but never when one is dismissed or partly accepted, so this tracker infers that from edits and
// cursor moves: one character at a time is typing through, several at once an accept-word or accept-line.
// Pure logic, no vscode import: the extension feeds it events, tests feed it by hand.
import type { FeedbackParams } from './protocol';

export interface Pos {
  line: number;
  character: number;
}

export interface Suggestion {
  interactionId: string;
  /** The text the suggestion would insert at `at`. */
  text: string;
  uri: string;
  at: Pos;
  /** The item's own text before `at` on the same line (what the user typed of a suggest-widget entry it extends). */
  before?: string;
}

/** One edit, as in `TextDocumentContentChangeEvent`: the range it replaced and the text put there. */
export interface Edit {
  start: Pos;
  end: Pos;
  text: string;
}

interface Current {
  s: Suggestion;
  /** Time on screen with the editor focused, up to `since`. */
  visibleMs: number;
  /** When the current focused stretch began; undefined while the editor is not focused or the text is gone. */
  since: number | undefined;
  /** Characters of the suggestion the user typed by hand, one at a time. */
  typed: number;
  /** Characters (and words) of the suggestion put in at once, by VS Code's accept-word and accept-line commands. */
  partial: number;
  partialWords: number;
  /** The whole suggestion was inserted; the accept command is on its way. */
  inserted: boolean;
}

const REMEMBERED = 64;

/** Words as VS Code's accept-next-word command steps over them. */
export function countWords(text: string): number {
  return (text.match(/[\p{L}\p{N}_]+/gu) ?? []).length;
}

export class FeedbackTracker {
  private current: Current | undefined;
  private readonly reported: string[] = [];
  private focused = true;

  /** `minShownMs`: a suggestion dismissed sooner than this was a flicker, not a judgement. */
  constructor(
    private readonly send: (p: FeedbackParams) => void,
    private readonly minShownMs = 250,
  ) {}

  get pending(): string | undefined {
    return this.current?.s.interactionId;
  }

  /** A suggestion is drawn. Whatever was shown before is gone. */
  shown(s: Suggestion, now: number): void {
    if (this.current?.s.interactionId === s.interactionId) {
      return;
    }
    this.resolve(now);
    const since = this.focused ? now : undefined;
    this.current = { s, visibleMs: 0, since, typed: 0, partial: 0, partialWords: 0, inserted: false };
  }

  /** The editor gained or lost the focus (another window, the chat panel): only focused time counts as seen. */
  focusChanged(focused: boolean, now: number): void {
    this.focused = focused;
    const c = this.current;
    if (!c) {
      return;
    }
    if (!focused) {
      this.pause(c, now);
    } else if (c.since === undefined && !this.finished(c)) {
      c.since = now;
    }
  }

  /** The `reinf.accepted` command ran: VS Code inserted the suggestion. */
  accepted(interactionId: string, text: string, now: number): void {
    const c = this.current;
    const counts = { accepted_chars: text.length, accepted_words: countWords(text) };
    if (c && c.s.interactionId === interactionId) {
      this.current = undefined;
      this.report({ interaction_id: interactionId, event: 'accepted', ...counts, shown_ms: this.shownMs(c, now) });
      return;
    }
    // Not the one we track (shown before a reconnect, say): still an acceptance, unless already counted.
    this.report({ interaction_id: interactionId, event: 'accepted', ...counts });
  }

  /** The document changed. Typing or word-accepting the suggestion's next characters keeps it alive;
   * anything else ends it. */
  edited(uri: string, edits: readonly Edit[], now: number): void {
    const c = this.current;
    if (!c || c.s.uri !== uri || edits.length === 0) {
      return;
    }
    if (c.inserted || edits.length !== 1) {
      this.resolve(now);
      return;
    }
    const e = edits[0];
    const cursor = this.expectedCursor(c);
    const remaining = c.s.text.slice(c.typed + c.partial);
    const atCursor = samePos(e.end, cursor);
    const pureInsert = samePos(e.start, e.end);
    if (atCursor && pureInsert && e.text.length > 0 && remaining.startsWith(e.text)) {
      if (e.text.length === 1) {
        c.typed += 1;
      } else if (e.text.length < remaining.length) {
        c.partial += e.text.length;
        c.partialWords += countWords(e.text);
      } else {
        c.inserted = true; // the rest at once: Tab, whose command follows
      }
      if (this.finished(c)) {
        this.pause(c, now); // nothing of it is left on screen
      }
    } else if (atCursor && remaining.length > 0 && e.text.endsWith(remaining)) {
      c.inserted = true;
      this.pause(c, now);
    } else if (!this.rewritten(c, e)) {
      this.resolve(now);
    }
  }

  /** The cursor moved in `uri`. Moving away from where the suggestion continues ends it. */
  cursorMoved(uri: string, to: Pos, now: number): void {
    const c = this.current;
    if (!c || c.inserted) {
      return;
    }
    if (c.s.uri !== uri || !samePos(to, this.expectedCursor(c))) {
      this.resolve(now);
    }
  }

  /** Escape, another editor, a closed document: the suggestion is gone. */
  dismissed(now: number): void {
    this.resolve(now);
  }

  /** An edit that rewrites the line up to the cursor and leaves it consistent with the suggestion: the suggest
   * widget inserting its entry ("ret" becomes "return"), or a backspace. VS Code keeps the ghost text then. */
  private rewritten(c: Current, e: Edit): boolean {
    const cursor = this.expectedCursor(c);
    const done = c.s.text.slice(0, c.typed + c.partial);
    if (!samePos(e.end, cursor) || e.start.line !== cursor.line || done.includes('\n') || e.text.includes('\n')) {
      return false;
    }
    const before = c.s.before ?? '';
    const lineStart = c.s.at.character - before.length; // where the item's text begins on this line
    if (e.start.line !== c.s.at.line || e.start.character < lineStart) {
      return false;
    }
    const known = before + done;
    const now = known.slice(0, e.start.character - lineStart) + e.text;
    const full = before + c.s.text;
    if (now.length < before.length || !full.startsWith(now) || now.length >= full.length) {
      return false;
    }
    // What the user now has of the suggestion, by their own hand (the widget's entry is not our accept).
    const matched = now.length - before.length;
    if (matched >= c.typed + c.partial) {
      c.typed += matched - c.typed - c.partial;
    } else {
      const cut = c.typed + c.partial - matched;
      const fromTyped = Math.min(cut, c.typed);
      c.typed -= fromTyped;
      c.partial -= cut - fromTyped;
    }
    return true;
  }

  private finished(c: Current): boolean {
    return c.inserted || c.typed + c.partial >= c.s.text.length;
  }

  private pause(c: Current, now: number): void {
    if (c.since !== undefined) {
      c.visibleMs += now - c.since;
      c.since = undefined;
    }
  }

  private shownMs(c: Current, now: number): number {
    return c.visibleMs + (c.since === undefined ? 0 : now - c.since);
  }

  private resolve(now: number): void {
    const c = this.current;
    this.current = undefined;
    if (!c) {
      return;
    }
    const base = { interaction_id: c.s.interactionId, shown_ms: this.shownMs(c, now) };
    const typed = c.typed > 0 ? { typed_chars: c.typed } : {};
    if (c.inserted) {
      // The text went in but the command did not come (yet): it was accepted all the same.
      this.report({ ...base, event: 'accepted', accepted_chars: c.s.text.length, accepted_words: countWords(c.s.text) });
    } else if (c.partial > 0) {
      this.report({ ...base, event: 'partially_accepted', accepted_chars: c.partial, accepted_words: c.partialWords, ...typed });
    } else if (c.typed > 0) {
      this.report({ ...base, event: 'typed_through', typed_chars: c.typed });
    } else if (base.shown_ms >= this.minShownMs) {
      this.report({ ...base, event: 'dismissed' });
    }
  }

  private report(p: FeedbackParams): void {
    if (this.reported.includes(p.interaction_id)) {
      return;
    }
    this.reported.push(p.interaction_id);
    if (this.reported.length > REMEMBERED) {
      this.reported.shift();
    }
    this.send(p);
  }

  private expectedCursor(c: Current): Pos {
    return advance(c.s.at, c.s.text.slice(0, c.typed + c.partial));
  }
}

/** The position after inserting `text` at `p`. */
export function advance(p: Pos, text: string): Pos {
  const lines = text.split('\n');
  if (lines.length === 1) {
    return { line: p.line, character: p.character + text.length };
  }
  return { line: p.line + lines.length - 1, character: lines[lines.length - 1].length };
}

function samePos(a: Pos, b: Pos): boolean {
  return a.line === b.line && a.character === b.character;
}
