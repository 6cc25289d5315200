-- Delayed jobs (issue 23): a job spec's `run_at` or `delay_s`. A delayed job is a queued job with
-- `not_before` set, as one waiting out a retry backoff is: the claim already skips it until it is
-- due, and says when the first one is (`jobs_deferred_idx`), so dispatch keeps a timer for it and
-- nothing polls. `run_at` keeps the time it was first due after the claim has cleared `not_before`
-- (`GET /v1/jobs/{id}` shows it; `blocked_by` tells "scheduled for" from a retry backoff by it).
ALTER TABLE jobs ADD COLUMN run_at timestamptz;
