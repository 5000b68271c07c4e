-- Standby runners (docs/OPERATIONS.md, "Standby and takeover"). The active
-- runner renews `lease_until` every tick on its control session, under its
-- epoch; a standby takes the job over once the lease has been expired for
-- `[job] takeover_after`. NULL: released (the runner ended cleanly) or
-- never taken. Times are the server's clock only, so runners on hosts whose
-- clocks disagree still agree on the lease.
ALTER TABLE jobs ADD COLUMN lease_until timestamptz;

-- Who holds (or last held) the lease: `host:pid:nonce` of one runner
-- process. A runner that reconnects after an outage finds another name
-- here when a standby took over meanwhile, and stands down.
ALTER TABLE jobs ADD COLUMN lease_holder text;
