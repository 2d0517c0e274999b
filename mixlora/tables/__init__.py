"""The paper's tables: one declarative row table (:mod:`.rows`), the experiment configs generated from it
(:mod:`.generate`), the paper's numbers looked up per row (:mod:`.paper`), and the runner that trains, evaluates
and aggregates a table here or through submitit (``python -m mixlora.tables``: :mod:`.runner`, :mod:`.submit`,
:mod:`.sweep`). docs/reproduce.md.
"""
