"""Runtime pieces both stages need — precision (autocast) choice, checkpoints, distributed
set-up — kept below the stages so that stage 2 imports nothing from stage 1."""
