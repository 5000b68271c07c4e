-- Fleet state, kept in a fleet's coordination database: one row per target
-- of a fleet (a policy with [[target]]s), so that `pacer status` shows the
-- fleet at a glance and a restarted fleet runner knows what already ended.
-- A fleet-wide pause is the `control` row of the fleet's job name.
CREATE TABLE fleet_targets (
    fleet       text NOT NULL,
    target      text NOT NULL,
    -- system_identifier of the cluster the target's database lives on.
    cluster     text,
    state       text NOT NULL
        CHECK (state IN ('waiting', 'running', 'done', 'failed', 'stopped')),
    message     text,
    started_at  timestamptz,
    finished_at timestamptz,
    updated_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (fleet, target)
);
