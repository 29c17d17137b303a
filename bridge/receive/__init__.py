"""The receive path: MQTT PUBLISH packets read off aiomqtt's socket, batched with a bound,
and acknowledged only after the batch is stored. `inbox` wires the units together;
`paho_internals` is the one place that touches paho's private members."""
