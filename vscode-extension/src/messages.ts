// Messages between the extension and its webviews. Types only; both sides import them.

export interface RatingInput {
  interaction_id: string;
  thumbs?: 'up' | 'down';
  stars?: number;
  comment?: string;
}

/** The answer to a rating, shown under the rated item. */
export type RatingReply =
  | { type: 'rated'; interactionId: string; message: string }
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
  | RatingReply
  | { type: 'cleared' };

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
  ts: string;
  prompt: string;
  response: string;
}

export type ToReview =
  | { type: 'items'; items: ReviewEntry[]; total: number; append: boolean }
  | { type: 'error'; message: string }
  | RatingReply;

export type FromReview =
  | { type: 'ready' }
  | { type: 'refresh' }
  | { type: 'more'; offset: number }
  | { type: 'rate'; rating: RatingInput };
