package revocation

import (
	"context"
	"encoding/json"
	"fmt"
	"time"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/wait"
	"k8s.io/client-go/rest"
)

// ConfigMap persists revocations into the policy's revocations ConfigMap with
// a merge patch adding one entry, retried with backoff.
type ConfigMap struct {
	// Client is a core/v1 REST client.
	Client    rest.Interface
	Namespace string
	Name      string
	Set       *Set
	// Timeout bounds all attempts together (default 3s).
	Timeout time.Duration
}

// Revoke implements Store. The entry is in the Set only once it is persisted.
func (c *ConfigMap) Revoke(ctx context.Context, jti string, exp time.Time) error {
	patch, err := json.Marshal(map[string]any{"data": map[string]string{jti: exp.UTC().Format(time.RFC3339)}})
	if err != nil {
		return err
	}
	timeout := c.Timeout
	if timeout == 0 {
		timeout = 3 * time.Second
	}
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	var lastErr error
	backoff := wait.Backoff{Duration: 50 * time.Millisecond, Factor: 2, Jitter: 0.2, Steps: 6, Cap: time.Second}
	err = wait.ExponentialBackoffWithContext(ctx, backoff, func(ctx context.Context) (bool, error) {
		lastErr = c.Client.Patch(types.MergePatchType).Namespace(c.Namespace).Resource("configmaps").Name(c.Name).
			Param("fieldManager", "keygate-sidecar").Body(patch).Do(ctx).Error()
		if lastErr == nil {
			return true, nil
		}
		if apierrors.IsForbidden(lastErr) || apierrors.IsInvalid(lastErr) {
			return false, lastErr
		}
		return false, nil
	})
	if err != nil {
		if lastErr != nil {
			return fmt.Errorf("patch ConfigMap %s/%s: %w", c.Namespace, c.Name, lastErr)
		}
		return fmt.Errorf("patch ConfigMap %s/%s: %w", c.Namespace, c.Name, err)
	}
	c.Set.Add(jti, exp)
	return nil
}
