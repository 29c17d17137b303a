"""Running and stopping the processes logagg depends on: Mosquitto with the shipped
configuration (`supervise.mosquitto`, the file `supervise/mosquitto.conf` is package data)
and the signal-then-kill stop every child gets (`supervise.process`).

Below every other package: `logagg up`, the benchmark and the tests use it, and it imports
none of them. Nothing is imported here.
"""
