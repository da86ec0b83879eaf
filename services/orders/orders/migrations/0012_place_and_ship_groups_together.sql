-- A group of in-stock orders and a group of shipments waiting at the same moment are written in one transaction:
-- one statement, one commit (`fastpath.GroupCommit`). Each group is written as `write_snapshots` writes it alone
-- (as one set when it can be, else write by write), the first group's rows then the second's, so each write has
-- the outcome it would have had in its own group.
--
-- Why: both kinds lock the products they reserve or ship, and in the bench's pipeline nearly every group of either
-- kind shares products with the group of the other kind being written. Written by two writers, each group waited
-- for the other's commit (a WAL flush with synchronous_commit on) before it could take its locks: at 900 orders/s
-- the place and ship groups' product locks waited 166 us per order, and every order paid two commits.
--
-- The products of both groups are locked first, all in sku order, as every writer of stock locks them: locked
-- group by group, a product of the second group could come before one the first group already holds.
CREATE FUNCTION write_snapshot_groups(
    p_kind_a text, p_docs_a jsonb, p_bodies_a bytea[], p_payloads_a bytea[], p_counts_a integer[],
    p_kind_b text, p_docs_b jsonb, p_bodies_b bytea[], p_payloads_b bytea[], p_counts_b integer[]
)
    RETURNS TABLE (outcome text, request_hash text, status_code integer, body bytea)
    LANGUAGE plpgsql VOLATILE AS $$
BEGIN
    PERFORM 1 FROM products
        WHERE sku = ANY (ARRAY(SELECT l->>'sku' FROM jsonb_array_elements(p_docs_a || p_docs_b) d,
                                                     jsonb_array_elements(d->'lines') l))
        ORDER BY sku FOR NO KEY UPDATE;
    RETURN QUERY SELECT * FROM write_snapshots(p_kind_a, p_docs_a, p_bodies_a, p_payloads_a, p_counts_a);
    RETURN QUERY SELECT * FROM write_snapshots(p_kind_b, p_docs_b, p_bodies_b, p_payloads_b, p_counts_b);
END $$;
