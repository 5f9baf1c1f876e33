package io.freshrec.flink;

import org.apache.flink.metrics.Gauge;

/**
 * A gauge holding a double set from Python. PyFlink's own Python gauges report longs only,
 * which cannot carry a rolling recall, a loss or a staleness in seconds.
 */
public final class DoubleGauge implements Gauge<Double> {
    private volatile double value = Double.NaN;

    public void set(double newValue) {
        value = newValue;
    }

    @Override
    public Double getValue() {
        return value;
    }
}
