-- Mark a room active at most every 10 seconds. Every journal insert used to
-- rewrite its room's row; with last_activity indexed those updates could not be
-- done in place, rooms bloated with dead rows, and every foreign-key check and
-- activity update of a busy server scanned them. Activity matters to the minute
-- (hibernation and abandonment), so ten seconds of slack costs nothing.
CREATE OR REPLACE FUNCTION update_room_activity() RETURNS trigger AS $$
BEGIN
    UPDATE rooms SET last_activity = now()
    WHERE code IN (SELECT DISTINCT room_code FROM new_rows)
      AND last_activity < now() - interval '10 seconds';
    RETURN NULL;
END;
$$ LANGUAGE plpgsql;
