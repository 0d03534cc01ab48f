"""Actor modules that `baton worker` subprocesses import in the tests (`tests.actors.chaos`)."""
