-- The group writes run on the plans PostgreSQL keeps, not on plans made again for every call.
--
-- A statement with parameters (in PL/pgSQL, each statement that reads a variable) is planned for its first five
-- executions with the values of the call (custom plans); after that its one generic plan is kept when that plan is
-- estimated no dearer than the custom ones. The writes' statements that take a list of ids or skus
-- (`o.id = ANY (ids)`) never pass: a generic plan reckons with ten elements, a group of the moment has one to three
-- under a moderate load, so each of their executions was planned again, the plan always the same (each order by its
-- key). In the bench's pipeline at 200 orders/s `pg_stat_statements` (with `track_planning`) counted a planning for
-- every execution of four of them (the ship group's updates of orders and order lines, its lock of the orders, the
-- rows the group returns): 259 ms of planning in a 10 s step. `force_generic_plan` keeps the generic plan from the
-- first call; for these statements it is the plan that custom planning made anyway (tests/orders/test_store.py
-- checks that the writes look orders and lines up by key under it).
--
-- The setting holds while the function runs, for the functions it calls too (`_write_group`, `_place_group`, ...),
-- and is restored on return: the connection's other statements keep the default.
ALTER FUNCTION write_snapshots(text, jsonb, bytea[], bytea[], integer[]) SET plan_cache_mode = force_generic_plan;
ALTER FUNCTION write_snapshot_groups(text, jsonb, bytea[], bytea[], integer[], text, jsonb, bytea[], bytea[], integer[])
    SET plan_cache_mode = force_generic_plan;
