-- The claim reads every table through its indexes, whatever the statistics say. Its statements
-- are planned once per session (0020), and a plan made while statistics said most jobs were queued
-- (taken during a backlog) read the jobs table from its start for the check that anything is
-- queued (0019): it went through every job drained since before it found one. That was 0.8 ms of
-- each step while 10,000 jobs drained through a pool capped at 32, and grows with the jobs the
-- table keeps. Every statement of the claim has an index made for it, so this only rules out the
-- reads whose cost grows with the table.
ALTER FUNCTION claim_step(text, integer, text, bigint) SET enable_seqscan = off;
