# MedMIX: raw cohorts -> expert embedding caches -> fusion models -> tables and figures.
# Default target: the embedded demo (config.yaml). See README.md.

import logging

from snakemake.utils import min_version, validate

from medmix import fork_server
from medmix.console import install as short_console_lines

min_version("8.20")

# Console lines of at most 300 characters: long file listings of a job are cut on screen
# (the full log under .snakemake/log/ keeps them); shell commands are printed whole.
short_console_lines(logging.getLogger("snakemake.logging"))


# The embedded demo config, unless the user names their own (`--configfile config/paper.yaml`),
# which then replaces it instead of being merged into it.
if not workflow.config_settings.configfiles:

    configfile: "config.yaml"


report: "workflow/report/workflow.rst"


# Local runs: one fork server imports torch, pandas and the project once and runs each Python
# job in a forked child (medmix/fork_server.py; MEDMIX_FORK_SERVER=off switches it off).
FORK_SERVER = []


onstart:
    FORK_SERVER.append(
        fork_server.start_for_workflow(
            workflow.local_exec, f"{LOGS}/fork_server.log"
        )
    )


onsuccess:
    fork_server.stop(FORK_SERVER.pop() if FORK_SERVER else None)


onerror:
    fork_server.stop(FORK_SERVER.pop() if FORK_SERVER else None)


validate(config, schema="workflow/schemas/config.schema.yaml")


include: "workflow/rules/common.smk"
include: "workflow/rules/paper.smk"
include: "workflow/rules/cohorts.smk"
include: "workflow/rules/extract.smk"
include: "workflow/rules/rag_common.smk"
include: "workflow/rules/rag.smk"
include: "workflow/rules/teachers.smk"
include: "workflow/rules/train.smk"
include: "workflow/rules/protocols.smk"
include: "workflow/rules/evaluate.smk"
include: "workflow/rules/report.smk"


# Table 1 and its figures, plus every paper table and figure the config's protocols /
# ablations / external / efficiency sections ask for (the rule paper_tables).
rule all:
    default_target: True
    input:
        paper_targets() + SAMPLE_STATUS,
