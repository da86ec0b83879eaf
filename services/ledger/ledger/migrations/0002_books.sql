-- The books: a chart of accounts and immutable, balanced journal entries.
-- The database itself holds the accounting rules, whoever connects:
--   * entries and lines cannot be updated, deleted or truncated (corrections are reversing entries);
--   * every line is a debit or a credit (never both), in minor units > 0;
--   * every line has its entry's currency and effective time (composite foreign key);
--   * at commit, every entry has the lines it declared (line_count), at least two, and debits = credits = total.

CREATE TABLE accounts (
    code        text PRIMARY KEY CHECK (code ~ '^[A-Za-z0-9][A-Za-z0-9._-]{0,31}$'),
    name        text NOT NULL CHECK (length(name) BETWEEN 1 AND 200),
    type        text NOT NULL CHECK (type IN ('asset', 'liability', 'equity', 'revenue', 'expense')),
    created_at  timestamptz NOT NULL DEFAULT now()
);

INSERT INTO accounts (code, name, type) VALUES
    ('1000', 'Cash', 'asset'),
    ('1100', 'Accounts receivable', 'asset'),
    ('1300', 'Input tax receivable', 'asset'),
    ('2000', 'Accounts payable', 'liability'),
    ('2100', 'Sales tax payable', 'liability'),
    ('2300', 'Customer credit', 'liability'),
    ('3000', 'Retained earnings', 'equity'),
    ('4000', 'Sales revenue', 'revenue'),
    ('4100', 'Sales returns', 'revenue'),
    ('6000', 'Operating expenses', 'expense');

CREATE TABLE journal_entries (
    id                 uuid PRIMARY KEY,
    seq                bigint GENERATED ALWAYS AS IDENTITY UNIQUE,
    currency           text NOT NULL CHECK (currency ~ '^[A-Z]{3}$'),
    memo               text CHECK (length(memo) <= 1000),
    source_type        text NOT NULL CHECK (length(source_type) BETWEEN 1 AND 64),
    source_event_id    uuid UNIQUE,
    reverses_entry_id  uuid UNIQUE REFERENCES journal_entries (id),
    effective_at       timestamptz NOT NULL,
    posted_at          timestamptz NOT NULL DEFAULT clock_timestamp(),
    line_count         integer NOT NULL CHECK (line_count >= 2),
    total_minor        bigint NOT NULL CHECK (total_minor > 0),
    UNIQUE (id, currency, effective_at)
);

CREATE TABLE journal_lines (
    id            bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    entry_id      uuid NOT NULL,
    line_no       integer NOT NULL CHECK (line_no >= 1),
    account       text NOT NULL REFERENCES accounts (code),
    currency      text NOT NULL,
    effective_at  timestamptz NOT NULL,
    debit_minor   bigint NOT NULL DEFAULT 0 CHECK (debit_minor >= 0),
    credit_minor  bigint NOT NULL DEFAULT 0 CHECK (credit_minor >= 0),
    party         text CHECK (length(party) BETWEEN 1 AND 128),
    CONSTRAINT one_side_positive CHECK ((debit_minor > 0) <> (credit_minor > 0)),
    UNIQUE (entry_id, line_no),
    FOREIGN KEY (entry_id, currency, effective_at) REFERENCES journal_entries (id, currency, effective_at)
);

-- An account's balance as of a time is one index range scan (index-only: the amounts are included).
CREATE INDEX journal_lines_balance ON journal_lines (account, currency, effective_at, id)
    INCLUDE (debit_minor, credit_minor);
-- Reconciliation: receivable, credit and payable balances per party, index-only.
CREATE INDEX journal_lines_party ON journal_lines (account, party, currency) INCLUDE (debit_minor, credit_minor);

CREATE FUNCTION ledger_immutable() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION '% on % is not allowed: posted entries are immutable; post a reversing entry', TG_OP, TG_TABLE_NAME
        USING ERRCODE = 'object_not_in_prerequisite_state';
END $$;

CREATE TRIGGER journal_entries_immutable BEFORE UPDATE OR DELETE ON journal_entries
    FOR EACH ROW EXECUTE FUNCTION ledger_immutable();
CREATE TRIGGER journal_lines_immutable BEFORE UPDATE OR DELETE ON journal_lines
    FOR EACH ROW EXECUTE FUNCTION ledger_immutable();
CREATE TRIGGER journal_entries_no_truncate BEFORE TRUNCATE ON journal_entries
    FOR EACH STATEMENT EXECUTE FUNCTION ledger_immutable();
CREATE TRIGGER journal_lines_no_truncate BEFORE TRUNCATE ON journal_lines
    FOR EACH STATEMENT EXECUTE FUNCTION ledger_immutable();

-- Checked at commit (deferred), once the entry and all its lines are in: the entry balances and is complete.
-- Lines added later to an already committed entry break its declared line_count, so they cannot commit either.
CREATE FUNCTION ledger_entry_balances() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    target    uuid;
    declared  integer;
    total     bigint;
    lines     integer;
    debits    numeric;
    credits   numeric;
BEGIN
    IF TG_TABLE_NAME = 'journal_entries' THEN
        target := NEW.id;
    ELSE
        target := NEW.entry_id;
    END IF;
    SELECT e.line_count, e.total_minor INTO declared, total FROM journal_entries e WHERE e.id = target;
    SELECT count(*), coalesce(sum(l.debit_minor), 0), coalesce(sum(l.credit_minor), 0)
      INTO lines, debits, credits
      FROM journal_lines l WHERE l.entry_id = target;
    IF lines <> declared OR debits <> credits OR debits <> total THEN
        RAISE EXCEPTION 'journal entry % does not balance: % lines (declared %), debits %, credits %, total %',
            target, lines, declared, debits, credits, total
            USING ERRCODE = 'check_violation';
    END IF;
    RETURN NULL;
END $$;

CREATE CONSTRAINT TRIGGER journal_entries_balance AFTER INSERT ON journal_entries
    DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION ledger_entry_balances();
CREATE CONSTRAINT TRIGGER journal_lines_balance AFTER INSERT ON journal_lines
    DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION ledger_entry_balances();

-- Entries by currency in posting order: the list filter, and the currencies in use (a skip scan).
CREATE INDEX journal_entries_currency ON journal_entries (currency, seq);
