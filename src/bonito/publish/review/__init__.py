"""`bonito review`: a local web app to accept, reject (with a reason) and edit a run's tasks one at
a time beside their passages; the decisions are kept in the run store, applied by `bonito export`
and counted, with the precision per task type they measure, by `bonito status` and the report."""
