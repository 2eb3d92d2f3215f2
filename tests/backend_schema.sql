-- The two tables as the Go backend's ORM creates them (spec/repair-rules.md),
-- written by hand, not by Django: used to prove `migrate --fake-initial` adopts them.
CREATE TABLE account_generation_status (
    id bigserial PRIMARY KEY,
    created_at timestamptz,
    updated_at timestamptz,
    account_id bigint NOT NULL,
    content_type varchar(50) NOT NULL,
    total_requested bigint NOT NULL,
    total_queued bigint DEFAULT 0,
    total_processing bigint DEFAULT 0,
    total_completed bigint DEFAULT 0,
    total_failed bigint DEFAULT 0,
    status varchar(50) NOT NULL DEFAULT 'queuing',
    started_at timestamptz,
    completed_at timestamptz,
    error_message text,
    error_code varchar(100),
    lock_id text
);
CREATE INDEX idx_account_generation_status_account_id ON account_generation_status (account_id);
CREATE INDEX idx_account_generation_status_lock_id ON account_generation_status (lock_id);

CREATE TABLE account_generation_locks (
    id bigserial PRIMARY KEY,
    created_at timestamptz,
    account_id bigint NOT NULL,
    content_type varchar(50) NOT NULL,
    locked_at timestamptz NOT NULL,
    lock_id text NOT NULL UNIQUE
);
CREATE INDEX idx_account_generation_locks_account_id ON account_generation_locks (account_id);
CREATE UNIQUE INDEX idx_account_content_type ON account_generation_locks (account_id, content_type);
