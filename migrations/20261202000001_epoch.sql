-- Fencing (docs/EXECUTOR.md, "Fencing"). Every acquisition of the runner
-- lock bumps `jobs.epoch` (after `SELECT ... FOR UPDATE` on the row), and
-- every batch writes its progress record only if the row still carries the
-- epoch its runner took (`INSERT ... SELECT ... FOR KEY SHARE`): a runner
-- that lost its lock to another cannot commit another batch.
--
-- On the jobs row rather than in a table of its own: the progress record's
-- foreign key already takes FOR KEY SHARE on this row in every batch, so
-- the epoch check adds no lock a batch did not already take, while the
-- per-tick `save_position` UPDATE (FOR NO KEY UPDATE) does not conflict
-- with it.
ALTER TABLE jobs ADD COLUMN epoch bigint NOT NULL DEFAULT 0;

-- The runner epoch each batch committed under (NULL: before fencing).
ALTER TABLE progress ADD COLUMN epoch bigint;
