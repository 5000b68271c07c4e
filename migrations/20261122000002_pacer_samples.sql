-- One row per controller tick: what `pacer report` draws. Signal readings
-- are kept nowhere else; a tick is ~1 s, so a 10-hour job writes ~36k small
-- rows, removed by `pacer cleanup --history`.
CREATE TABLE samples (
    job             text NOT NULL,
    at              timestamptz NOT NULL,
    state           text NOT NULL,
    knobs           jsonb NOT NULL,
    rows_done       bigint NOT NULL,
    rows_per_second double precision NOT NULL,
    -- {"signal name": value or null}
    signals         jsonb NOT NULL DEFAULT '{}',
    -- failed batch attempts of the tick by error class: {"lock_timeout": 2}
    retries         jsonb NOT NULL DEFAULT '{}',
    PRIMARY KEY (job, at)
);
