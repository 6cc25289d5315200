-- Runner fleets: leader-mode pools, taints and tolerations, provisioned workers (seeds 001, 002).

-- A leader-mode pool's elected runner (NULL: none healthy, its jobs wait). The capacity service
-- elects it; the claim step offers work only to it.
ALTER TABLE pools ADD COLUMN leader_runner_id text REFERENCES runners (id);
-- A provisioner starts a one-shot worker per job (NULL: registered runners only). Its fleet is
-- capped at max_workers live workers, counted from the provisioner itself (0 = no cap).
ALTER TABLE pools ADD COLUMN provisioner text;
ALTER TABLE pools ADD COLUMN max_workers integer NOT NULL DEFAULT 0
    CONSTRAINT pools_max_workers_check CHECK (max_workers >= 0);

-- The taints a job tolerates: a runner with taints T takes only jobs whose tolerations include T.
-- Part of the shape, so matching still visits only shapes a free runner can take (seed 004).
ALTER TABLE jobs ADD COLUMN tolerations text[] NOT NULL DEFAULT '{}';
ALTER TABLE job_shapes ADD COLUMN tolerations text[] NOT NULL DEFAULT '{}';  -- sorted, distinct
ALTER TABLE job_shapes DROP CONSTRAINT job_shapes_pool_labels_tenant_key;
ALTER TABLE job_shapes ADD CONSTRAINT job_shapes_pool_labels_tenant_tolerations_key
    UNIQUE (pool, labels, tenant, tolerations);
