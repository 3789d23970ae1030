// Implicit feedback on inline completions. VS Code tells an extension when an item is accepted (the item's
// command runs) but never when one is dismissed, so this tracker infers it from edits and cursor moves.
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
}

/** One edit, as in `TextDocumentContentChangeEvent`: the range it replaced and the text put there. */
export interface Edit {
  start: Pos;
  end: Pos;
  text: string;
}

interface Current {
  s: Suggestion;
  shownAt: number;
  /** How many characters of the suggestion the user has typed (or word-accepted) so far. */
  typed: number;
  /** The whole suggestion was inserted; the accept command is on its way. */
  inserted: boolean;
}

const REMEMBERED = 64;

export class FeedbackTracker {
  private current: Current | undefined;
  private readonly reported: string[] = [];

  /** `minShownMs`: a suggestion dismissed sooner than this was a flicker, not a judgement. */
  constructor(
    private readonly send: (p: FeedbackParams) => void,
    private readonly minShownMs = 250,
  ) {}

  get pending(): string | undefined {
    return this.current?.s.interactionId;
  }

  /** A suggestion is on screen. Whatever was shown before is gone. */
  shown(s: Suggestion, now: number): void {
    if (this.current?.s.interactionId === s.interactionId) {
      return;
    }
    this.resolve(now);
    this.current = { s, shownAt: now, typed: 0, inserted: false };
  }

  /** The `reinf.accepted` command ran: VS Code inserted the suggestion. */
  accepted(interactionId: string, text: string, now: number): void {
    const c = this.current;
    if (c && c.s.interactionId === interactionId) {
      this.current = undefined;
      this.report({
        interaction_id: interactionId,
        event: 'accepted',
        accepted_chars: text.length,
        shown_ms: now - c.shownAt,
      });
      return;
    }
    // Not the one we track (shown before a reconnect, say): still an acceptance, unless already counted.
    this.report({ interaction_id: interactionId, event: 'accepted', accepted_chars: text.length });
  }

  /** The document changed. Typing the suggestion's next characters keeps it alive; anything else ends it. */
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
    const remaining = c.s.text.slice(c.typed);
    const atCursor = samePos(e.end, cursor);
    const pureInsert = samePos(e.start, e.end);
    if (atCursor && pureInsert && e.text.length > 0 && e.text.length < remaining.length && remaining.startsWith(e.text)) {
      c.typed += e.text.length;
    } else if (atCursor && remaining.length > 0 && e.text.endsWith(remaining)) {
      c.inserted = true;
    } else {
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

  private resolve(now: number): void {
    const c = this.current;
    this.current = undefined;
    if (!c) {
      return;
    }
    const base = { interaction_id: c.s.interactionId, shown_ms: now - c.shownAt };
    if (c.inserted) {
      // The text went in but the command did not come (yet): it was accepted all the same.
      this.report({ ...base, event: 'accepted', accepted_chars: c.s.text.length });
    } else if (c.typed > 0) {
      this.report({ ...base, event: 'partially_accepted', accepted_chars: c.typed });
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
    return advance(c.s.at, c.s.text.slice(0, c.typed));
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
