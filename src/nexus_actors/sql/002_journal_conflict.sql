-- A journal row may be written twice only as the same event (a retried batch):
-- the store's insert calls this when a different event holds the sequence, so the
-- batch fails instead of the event being silently dropped and acknowledged.
CREATE OR REPLACE FUNCTION journal_conflict(room text, seq bigint) RETURNS text AS $$
BEGIN
    RAISE EXCEPTION 'room % already has a different event at sequence %', room, seq
        USING ERRCODE = 'unique_violation';
END;
$$ LANGUAGE plpgsql;
