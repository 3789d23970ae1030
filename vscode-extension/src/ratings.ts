// Sending a rating from either webview, and the reply the webview shows under the rated item.
import type { Daemon } from './connection';
import { errorText, savedMessage, untilMessage } from './format';
import type { RatingInput, RatingReply } from './messages';
import type { RateResult } from './protocol';

export async function submitRating(daemon: Daemon, rating: RatingInput, onRated: (r: RateResult) => void): Promise<RatingReply> {
  try {
    const r = await daemon.request<RateResult>('reinf/rate', rating);
    onRated(r);
    return { type: 'rated', interactionId: rating.interaction_id, saved: savedMessage(rating), until: untilMessage(r) };
  } catch (e) {
    return { type: 'rateError', interactionId: rating.interaction_id, message: errorText(e) };
  }
}
