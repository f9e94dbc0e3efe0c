"""mixsearch: search data mixtures and training budgets for instruction tuning.

Data flows one way, one module per stage::

    corpus (search.corpus) -> pool (search.pool) -> mixture (search.mixture)
        -> trial (trainables.train) -> experiment results (search.driver) -> report (analysis)
"""
