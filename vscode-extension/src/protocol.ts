// The daemon's custom protocol, as DESIGN.md "The protocol" describes it. Types only.

export type Thumbs = 'up' | 'down';

export interface ChatMessage {
  role: 'system' | 'user' | 'assistant';
  content: string;
}

export interface ChatContext {
  uri?: string;
  language?: string;
  selection?: string;
  /** The whole current file. */
  file?: string;
}

export interface ChatParams {
  messages: ChatMessage[];
  kind?: 'chat' | 'ask';
  context?: ChatContext;
  max_tokens?: number;
  temperature?: number;
  partialResultToken?: string;
}

export interface ChatResult {
  interaction_id: string;
  text: string;
  finish_reason: string;
  model: string;
  adapter_version: number;
  timings: { queue_ms?: number; prompt_ms?: number; generate_ms?: number; total_ms?: number };
}

export interface ChatDelta {
  interaction_id?: string;
  delta: string;
}

export interface RateParams {
  interaction_id: string;
  thumbs?: Thumbs;
  stars?: number;
  comment?: string;
}

export interface RateResult {
  rating_id: number;
  ratings_total: number;
  until_next_training: number;
}

export type FeedbackKind = 'accepted' | 'dismissed' | 'partially_accepted' | 'typed_through';

export interface FeedbackParams {
  interaction_id: string;
  event: FeedbackKind;
  /** Characters (and words) put in by accepting: all of it, or what accept-word/accept-line inserted. */
  accepted_chars?: number;
  accepted_words?: number;
  /** Characters of the suggestion the user typed by hand. */
  typed_chars?: number;
  /** Time on screen with the editor focused. */
  shown_ms?: number;
}

/** How far a run has got; `eta_s` is the time left at its pace so far, null until it has made some progress. */
export interface RunTiming {
  trigger?: string | null;
  elapsed_s?: number | null;
  eta_s?: number | null;
}

export interface TrainingState extends RunTiming {
  state: string;
  run_id?: number | null;
  phase?: string | null;
  progress?: number | null;
  message?: string | null;
}

export interface StatusResult {
  model: string;
  device: string;
  adapter_version: number;
  ratings_total: number;
  until_next_training: number;
  training: TrainingState;
  last_run?: RunInfo | null;
  acceptance?: Acceptance;
}

/** How often shown inline completions were accepted. */
export interface AcceptanceBucket {
  shown: number;
  accepted: number;
  partially_accepted: number;
  rate: number | null;
}

export interface Acceptance {
  last_7_days: AcceptanceBucket;
  active: AcceptanceBucket & { adapter_version: number };
  base: AcceptanceBucket;
}

export interface RunInfo {
  run_id: number;
  state: string;
  trigger: string;
  started?: string | null;
  finished?: string | null;
  metrics?: Record<string, unknown> | null;
  adapter_version?: number | null;
  error?: string | null;
}

export interface RunsResult {
  runs: RunInfo[];
}

export interface AdapterInfo {
  version: number;
  run_id?: number | null;
  created?: string | null;
  status: string;
}

export interface AdaptersResult {
  adapters: AdapterInfo[];
  active: number;
}

export interface HistoryItem {
  interaction_id: string;
  kind: string;
  ts: string;
  prompt: string;
  response: string;
  rating?: { thumbs?: Thumbs | null; stars?: number | null; comment?: string | null } | null;
  /** Where a completion was asked for. */
  uri?: string | null;
  line?: number | null;
}

export interface HistoryResult {
  items: HistoryItem[];
  total: number;
}

export interface TrainingProgress extends RunTiming {
  run_id: number;
  state: string;
  phase?: string | null;
  progress?: number | null;
  message?: string | null;
}

export interface AdapterChanged {
  adapter_version: number;
  reason?: string | null;
}

/** The argument of the `reinf.accepted` command that the daemon puts on each inline completion item. */
export interface AcceptedArg {
  interaction_id: string;
  text: string;
}
