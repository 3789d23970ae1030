// Messages between the extension and its webviews. Types only; both sides import them.

export interface RatingInput {
  interaction_id: string;
  thumbs?: 'up' | 'down';
  stars?: number;
  comment?: string;
}

/** The answer to a rating, shown under the rated item: what was saved, and how many ratings are still to go. */
export type RatingReply =
  | { type: 'rated'; interactionId: string; saved: string; until: string }
  | { type: 'rateError'; interactionId: string; message: string };

/** What a chat turn sent along as context, shown in the panel. */
export interface SentContext {
  label: string;
  text: string;
}

export type ToChat =
  | { type: 'connection'; connected: boolean; text: string }
  | { type: 'user'; turn: number; content: string; context?: SentContext }
  | { type: 'delta'; turn: number; html: string }
  | {
      type: 'done';
      turn: number;
      html: string;
      interactionId: string;
      meta: string;
    }
  | { type: 'error'; turn: number; message: string }
  | { type: 'restore'; turns: RestoredTurn[] }
  | UntilUpdate
  | RatingReply
  | { type: 'cleared' };

/** A finished turn of the thread, redrawn after a window reload. */
export interface RestoredTurn {
  turn: number;
  content: string;
  context?: SentContext;
  html: string;
  interactionId: string;
  meta: string;
  error?: string;
}

export type FromChat =
  | { type: 'ready' }
  | { type: 'ask'; text: string; include: 'none' | 'selection' | 'file' }
  | { type: 'stop' }
  | { type: 'newChat' }
  | { type: 'rate'; rating: RatingInput }
  | { type: 'copy'; code: string }
  | { type: 'insert'; code: string }
  | { type: 'focus'; focused: boolean };

export interface ReviewEntry {
  interactionId: string;
  kind: string;
  /** When, as "3 min ago", and the time itself for the tooltip. */
  when: string;
  ts: string;
  /** For a completion: "main.py, line 12". */
  where: string;
  prompt: string;
  response: string;
}

/** The ratings still to go, said again under the newest rating when the count changes elsewhere. */
export interface UntilUpdate {
  type: 'until';
  text: string;
}

export type ToReview =
  | { type: 'items'; items: ReviewEntry[]; total: number; append: boolean }
  | { type: 'error'; message: string }
  | UntilUpdate
  | RatingReply;

export type FromReview =
  | { type: 'ready' }
  | { type: 'refresh' }
  | { type: 'more'; offset: number }
  | { type: 'rate'; rating: RatingInput };
