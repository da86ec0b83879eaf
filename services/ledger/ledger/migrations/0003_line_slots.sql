-- Cheaper, equally strict: a line must take one of its entry's declared slots (line_no 1..line_count, unique per
-- entry), checked as it is inserted. A committed entry has every slot filled (its deferred balance check counts
-- them), so no line can ever be added to it; the per-line deferred re-check of the whole entry is then redundant.
CREATE FUNCTION ledger_line_slot() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    declared integer;
BEGIN
    SELECT e.line_count INTO declared FROM journal_entries e WHERE e.id = NEW.entry_id;
    IF FOUND AND NEW.line_no > declared THEN
        RAISE EXCEPTION 'journal entry % declares % lines; line % cannot be added', NEW.entry_id, declared, NEW.line_no
            USING ERRCODE = 'check_violation';
    END IF;
    RETURN NEW;
END $$;

CREATE TRIGGER journal_lines_slot BEFORE INSERT ON journal_lines FOR EACH ROW EXECUTE FUNCTION ledger_line_slot();
DROP TRIGGER journal_lines_balance ON journal_lines;
