-- pacer's own tables. Run with search_path set to pacer's schema
-- (`database.schema`, default `pacer`), so nothing here is qualified.

-- One row per job (a policy's `job.name`): identity, what it does, where it is.
CREATE TABLE jobs (
    name          text PRIMARY KEY,
    -- sha256 of table, key, pending and update: a resumed run must match.
    fingerprint   text NOT NULL,
    -- hash of limits/controller/signals/windows: may change, but is logged.
    settings_hash text NOT NULL,
    table_name    text NOT NULL,
    key_column    text NOT NULL,
    pending_sql   text NOT NULL,
    update_sql    text NOT NULL,
    -- signal baselines captured before the first start, reused on resume.
    baselines     jsonb NOT NULL DEFAULT '{}',
    state         text NOT NULL
        CHECK (state IN ('running', 'slowing', 'paused', 'done', 'stopped', 'failed')),
    -- 0 = main pass; 1.. = sweep passes that catch rows inserted behind the cursor.
    pass          integer NOT NULL DEFAULT 0,
    -- Highest key (as text) below which every batch of the pass is done;
    -- NULL = start of the pass.
    cursor_key    text,
    -- One count of pending rows when the job was created (rows_left estimate).
    rows_at_start bigint,
    knobs         jsonb,
    message       text,
    runner_pid    integer,
    runner_host   text,
    created_at    timestamptz NOT NULL DEFAULT now(),
    started_at    timestamptz,
    updated_at    timestamptz NOT NULL DEFAULT now(),
    finished_at   timestamptz
);

-- One row per committed batch, written in the batch's own transaction: the
-- row exists if and only if the batch committed.
CREATE TABLE progress (
    job          text NOT NULL REFERENCES jobs (name) ON DELETE CASCADE,
    batch_id     bigint NOT NULL,
    pass         integer NOT NULL,
    first_key    text NOT NULL,
    last_key     text NOT NULL,
    keys         integer NOT NULL,
    rows         bigint NOT NULL,
    committed_at timestamptz NOT NULL DEFAULT clock_timestamp(),
    PRIMARY KEY (job, batch_id)
);
CREATE INDEX progress_job_committed ON progress (job, committed_at);

-- The pause switch, flipped by `pacer pause` / `pacer resume`.
CREATE TABLE control (
    job        text PRIMARY KEY,
    paused     boolean NOT NULL DEFAULT false,
    changed_by text NOT NULL,
    reason     text NOT NULL DEFAULT '',
    changed_at timestamptz NOT NULL DEFAULT now()
);

-- Every decision that changed something, with its causes.
CREATE TABLE decisions (
    id      bigserial PRIMARY KEY,
    job     text NOT NULL,
    at      timestamptz NOT NULL,
    state   text NOT NULL,
    action  text NOT NULL,
    before  jsonb NOT NULL,
    knobs   jsonb NOT NULL,
    causes  jsonb NOT NULL,
    summary text NOT NULL
);
CREATE INDEX decisions_job_id ON decisions (job, id);
