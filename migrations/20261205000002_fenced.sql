-- One-statement batches (docs/EXECUTOR.md, "Batch transactions"). A batch
-- is a single statement that applies the policy's update and writes the
-- batch's progress record, and commits on its own (no BEGIN, no COMMIT).
-- The epoch check is part of it: when the job's row no longer carries the
-- epoch the batch runs under, the whole statement must fail, so that the
-- update it has already made is rolled back with it. This function is
-- called only then, and raises; its SQLSTATE (PF001) tells pacer the batch
-- was fenced off, not broken. VOLATILE, so that the planner never calls it
-- ahead of time.
CREATE FUNCTION fenced(job text, epoch bigint) RETURNS bigint
LANGUAGE plpgsql VOLATILE AS $$
BEGIN
    RAISE EXCEPTION 'job % no longer carries epoch % (another pacer took it over): batch rolled back', job, epoch
        USING ERRCODE = 'PF001';
END
$$;
