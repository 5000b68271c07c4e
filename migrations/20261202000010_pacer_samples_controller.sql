-- What the controller judged at each tick, beside the raw readings:
-- {"target_rate": rows/s, "signals": [{"name", "raw", "estimate", "delay"}]}.
-- NULL for ticks recorded by an older pacer.
ALTER TABLE samples ADD COLUMN controller jsonb;
