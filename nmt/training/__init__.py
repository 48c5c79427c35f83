"""`nmt train` and what serves it: the loop (`loop`), one optimizer update (`trainer`), a run
built from its recipe and last.pt (`run`), the learning-rate schedules (`schedule`), the loss
(`loss`), validation and checkpoint selection (`validate`), time budgets (`budget`), several
GPUs (`distributed`), the run's log (`runlog`), learning curves (`curves`) and `nmt tune`
(`tune`: beam size and length penalty chosen on the validation set)."""
