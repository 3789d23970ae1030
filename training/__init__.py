"""reinf's trainer: reward model, PPO on LoRA adapters, evaluation gate (`python -m reinf.training RUN_DIR`).

The contract between the daemon (server/scheduler.py) and the trainer
--------------------------------------------------------------------
The daemon creates `$REINF_HOME/runs/<run_id>/` (0700) and puts in it:

- `data.parquet`: the store's snapshot, one row per rated interaction (interaction_id, ts, kind, model,
  adapter_version, prompt, response, context, thumbs, stars, comment, rating_id, accepted, dismissed,
  partially_accepted). `prompt` is the exact text the model was given.
- `config.json`: `Config.to_dict()` plus `run_id`, `base_model_path` (the resolved local model folder) and
  `active_adapter` (`{version, path}` of the adapter now serving, or null for the base).

It starts `python -m reinf.training RUN_DIR` in its own process group, with OMP/MKL threads set to
`training.threads` and stdout/stderr appended to `train.log`. The trainer lowers its priority
(`os.nice(training.nice)`), uses `training.threads` torch threads, exits by itself if the daemon dies, and
never opens DuckDB. It writes:

- `progress.jsonl`: one JSON object per line, `{ts, phase, progress, message}`; `progress` is the whole run's
  0..1 and `phase` one of snapshot, load, reward_model, ppo, eval, save, done.
- `train.log`: the run's log (the trainer's stderr).
- `metrics.json` (atomically, last): `decision` ("publish" | "reject"), `reasons` (why not, in words),
  `data` (counts), `reward_model` (held-out `correlation`, `pairwise_accuracy`, whether it was retrained),
  `ppo` (score, KL and β per step), `gate` (scores, KL to the base, general loss, checks), `timings`.
- `adapter/`: with decision "publish" only, the candidate in PEFT format, written to `.adapter.tmp` and renamed.

Exit code 0 means metrics.json says what happened; anything else is a failed run, and the last line of
train.log says why. Publishing (copy to `adapters/v<N>` via a temporary folder, store row, hot swap) is the
daemon's job, so a trainer killed at any moment never leaves a half-written adapter where one is served.

The reward model lives in `$REINF_HOME/reward_model/` (its LoRA adapter, score head and `meta.json` with the
rating watermark it was trained at) and is retrained only after `reward_model.min_new_ratings` new ratings.
Only a judge that passed its held-out check is saved there. Before retraining, that saved judge scores the newer
ratings; if they contradict it (`reward_model.contradiction_p`), the run is rejected and the saved judge stays as
it was. `config.json`'s `fresh_judge: true` (`reinf train --fresh-judge`) trains a new judge regardless.

Off-policy ratings
------------------
Most rated answers were not written by the policy being trained: older adapters, the base, or another model
wrote them. They all train the reward model, which judges text whoever wrote it. PPO optimises only on fresh
rollouts of the current policy. Treating logged answers as the policy's own samples, as some tools do, gives
PPO's importance ratio the wrong denominator and pushes the policy in directions it never took.
"""
