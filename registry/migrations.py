"""Ordered, named schema migrations of the DuckDB catalog.

Append new migrations; never edit one that has shipped. Each runs once, in
order, inside the transaction that records it in `schema_migrations`.
"""

from __future__ import annotations

# An adapter's type from its adapter_config.json: the PEFT type, with the
# variants LoRA takes as flags: lora, lora+dora, lora+rslora, ia3, ...
ADAPTER_TYPE = (
    "lower(adapter_config->>'$.peft_type')"
    " || CASE WHEN adapter_config->>'$.use_dora' = 'true' THEN '+dora' ELSE '' END"
    " || CASE WHEN adapter_config->>'$.use_rslora' = 'true' THEN '+rslora' ELSE '' END"
)

MIGRATIONS: tuple[tuple[str, str], ...] = (
    (
        "0001_initial",
        """
        CREATE TABLE artifacts (
            id VARCHAR PRIMARY KEY,            -- content id: xxh3-128 of the files, hex
            name VARCHAR NOT NULL,
            version INTEGER NOT NULL,          -- 1, 2, ... per name
            kind VARCHAR NOT NULL,             -- model | adapter | merge | checkpoint
            created_at TIMESTAMPTZ NOT NULL,
            source_path VARCHAR,               -- where it was added from
            size_bytes BIGINT NOT NULL,        -- sum of its files' sizes
            n_tensors INTEGER NOT NULL,
            method VARCHAR,                    -- free text: sft, dpo, lora, ties, ...
            config JSON,                       -- config.json
            adapter_config JSON,               -- adapter_config.json
            safetensors_metadata JSON,         -- __metadata__ of the first weights file
            user_metadata JSON,                -- --meta key=value pairs
            UNIQUE (name, version)
        );
        CREATE TABLE tensors (
            artifact_id VARCHAR NOT NULL,
            name VARCHAR NOT NULL,
            dtype VARCHAR NOT NULL,            -- safetensors dtype: F32, BF16, ...
            shape BIGINT[] NOT NULL,
            nbytes BIGINT NOT NULL,
            blob VARCHAR NOT NULL,             -- xxh3-128 of the tensor's bytes
            file VARCHAR NOT NULL,             -- the safetensors file it sits in
            position INTEGER NOT NULL,         -- its index in that file's data order
            file_offset BIGINT NOT NULL        -- byte offset of its data in that file
        );
        CREATE TABLE files (
            artifact_id VARCHAR NOT NULL,
            path VARCHAR NOT NULL,             -- relative to the artifact's folder
            role VARCHAR NOT NULL,             -- weights | companion
            size_bytes BIGINT NOT NULL,
            blob VARCHAR NOT NULL,             -- companion: the file; weights: its header
            metadata JSON                      -- weights: the file's __metadata__
        );
        CREATE TABLE edges (
            child_id VARCHAR NOT NULL,
            parent_id VARCHAR NOT NULL,
            -- finetune | adapter | merge | quantized | checkpoint
            relation VARCHAR NOT NULL,
            method VARCHAR
        );
        CREATE INDEX tensors_by_artifact ON tensors (artifact_id);
        CREATE INDEX tensors_by_blob ON tensors (blob);
        """,
    ),
    (
        "0002_tensor_deltas",
        """
        -- What each artifact changed against each parent (and any other pair
        -- `graft diff` compared), per base tensor. A cache of a computation over
        -- blobs: graft fills it at registration and whenever a query finds a
        -- pair missing (`delta_pairs`).
        CREATE TABLE tensor_deltas (
            child_id VARCHAR NOT NULL,
            parent_id VARCHAR NOT NULL,
            tensor VARCHAR NOT NULL,           -- the base model's tensor name
            status VARCHAR NOT NULL,           -- identical | changed | reshaped | added | removed
            layer INTEGER,                     -- NULL outside the layer stack
            block VARCHAR NOT NULL,            -- embedding | attention | mlp | norm | head | other
            module VARCHAR NOT NULL,           -- q_proj, down_proj, c_attn, ...
            frac_changed DOUBLE,               -- fraction of elements that changed
            rel_change DOUBLE,                 -- ||W - W_parent||_F / ||W_parent||_F
            max_abs DOUBLE,                    -- max |W - W_parent|
            delta_norm DOUBLE,                 -- ||W - W_parent||_F
            rank INTEGER,                      -- exact rank of an adapter's s*B*A
            stable_rank DOUBLE,                -- ||dW||_F^2 / ||dW||_2^2 (2-D tensors)
            old_shape BIGINT[],
            new_shape BIGINT[]
        );
        CREATE TABLE delta_pairs (
            child_id VARCHAR NOT NULL,
            parent_id VARCHAR NOT NULL,
            computed_at TIMESTAMPTZ NOT NULL DEFAULT now()
        );
        CREATE INDEX tensor_deltas_by_child ON tensor_deltas (child_id);
        """,
    ),
    (
        "0003_lineage_views",
        """
        -- Every (artifact, ancestor) pair, with the distance and the last step's relation.
        CREATE VIEW artifact_lineage AS
        WITH RECURSIVE walk(artifact_id, ancestor_id, depth, relation, method) AS (
            SELECT child_id, parent_id, 1, relation, method FROM edges
            UNION ALL
            SELECT w.artifact_id, e.parent_id, w.depth + 1, e.relation, e.method
            FROM walk w JOIN edges e ON e.child_id = w.ancestor_id
            WHERE w.depth < 1000
        )
        SELECT * FROM walk;
        -- Per artifact, parent, layer and module: how many tensors changed and how much.
        CREATE VIEW layer_touch AS
        SELECT d.child_id AS artifact_id, a.name, a.version, a.method, d.parent_id,
               d.layer, d.block, d.module, count(*) AS tensors,
               max(d.rel_change) AS max_rel_change, avg(d.rel_change) AS mean_rel_change,
               min(d.stable_rank) AS min_stable_rank
        FROM tensor_deltas d
        JOIN edges e ON e.child_id = d.child_id AND e.parent_id = d.parent_id
        JOIN artifacts a ON a.id = d.child_id
        WHERE d.status <> 'identical'
        GROUP BY ALL;
        """,
    ),
    (
        "0004_edge_params",
        """
        -- How a parent was used: a merge input's weight, density, ... (JSON object).
        ALTER TABLE edges ADD COLUMN params JSON;
        CREATE OR REPLACE VIEW artifact_lineage AS
        WITH RECURSIVE walk(artifact_id, ancestor_id, depth, relation, method, params) AS (
            SELECT child_id, parent_id, 1, relation, method, params FROM edges
            UNION ALL
            SELECT w.artifact_id, e.parent_id, w.depth + 1, e.relation, e.method, e.params
            FROM walk w JOIN edges e ON e.child_id = w.ancestor_id
            WHERE w.depth < 1000
        )
        SELECT * FROM walk;
        """,
    ),
    (
        "0005_remotes",
        """
        -- NULL: stored here; else the remote it is only on (fetched: lineage, no weights).
        ALTER TABLE artifacts ADD COLUMN remote VARCHAR;
        -- Every version claimed on each fetched remote (local artifacts' too).
        CREATE TABLE remote_names (
            remote VARCHAR NOT NULL,
            name VARCHAR NOT NULL,
            version INTEGER NOT NULL,
            id VARCHAR NOT NULL,
            PRIMARY KEY (remote, name, version)
        );
        """,
    ),
    (
        "0006_adapter_type_amendments",
        f"""
        -- lora, lora+dora, ia3, ...: apart from the method (sft, dpo, ...) it was trained by.
        ALTER TABLE artifacts ADD COLUMN adapter_type VARCHAR;
        UPDATE artifacts SET adapter_type = {ADAPTER_TYPE} WHERE adapter_config IS NOT NULL;
        -- The newest amendment applied (its file name under amendments/<id>/), if any.
        ALTER TABLE artifacts ADD COLUMN amended VARCHAR;
        """,
    ),
)

LATEST = len(MIGRATIONS)
